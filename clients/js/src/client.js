// ChatClient: one WebSocket to chatd, kept alive across drops.
//
// What it guarantees the application (see README "Use it from a browser"):
// - Reconnects by itself with exponential backoff and full jitter
//   (reconnect.js), except after an authentication refusal or a close the
//   application asked for. 1012 and 1013 follow their meaning.
// - Every room is joined again on reconnect with `since` set to the newest
//   message id seen there, and `message` events are deduplicated by id
//   (messages.js): the application sees no gap and no duplicate.
// - A join the server answers with `recovered: false` (more was missed than
//   its replay holds, or its history no longer reaches back) is followed by
//   `history` pages from `since` up to the first replayed message; their
//   messages are emitted as `message` events, and a `recovery` event says
//   how it ended. A connection closed with 1013 before a `since` join made
//   any progress is not retried with the same `since` (that replay would
//   fail the same way): the room is joined without it and paged instead.
// - `send` queues (bounded, outbox.js) while disconnected, with a
//   `clientMsgId` per message, and sends again after a drop with the same
//   id: the server stores a message once.
// - Typing frames are throttled (typing.js).
// - With `getToken`, the token is renewed before its `exp` on the open
//   connection (a `refresh` frame), and every reconnect asks for a fresh
//   one. A connection closed 4001 (token expired) is reconnected only with
//   a token from `getToken`; one closed 4003 (banned) is never reconnected.
//
// Plain ES module with no dependencies: browsers load it as it is, and Node
// 20 uses it with the `ws` package passed as `WebSocket`.

import { Emitter } from './emitter.js';
import { CloseCode, Reconnector, classifyRefusal } from './reconnect.js';
import { Outbox, MESSAGE_ERROR_CODES, OUTBOX_LIMIT } from './outbox.js';
import { TypingThrottle } from './typing.js';
import { RoomCursors, isMessageId, isRoomId } from './messages.js';

/** Room a connection joins when the application names none (contract section 2). */
export const DEFAULT_ROOM = 'lobby';
/** Largest frame the server reads; a bigger one closes the connection with 1009. */
export const MAX_FRAME_BYTES = 64 * 1024;
/** Largest history page the server returns. */
export const HISTORY_MAX_LIMIT = 200;
/**
 * Most `history` pages one gap recovery asks for (200 messages each): a gap
 * longer than this is left to the application (the `recovery` event says
 * where it stopped), so recovery always ends.
 */
export const GAP_MAX_PAGES = 50;
/** Longest lead of a token refresh before the token's `exp`, ms (a shorter-lived token refreshes earlier in its life: see `refreshLeadMs`). */
export const REFRESH_LEAD_MS = 30_000;
/** Share of a token's lifetime left when it is refreshed, if that is less than `refreshLeadMs`. */
export const REFRESH_LIFETIME_SHARE = 0.2;
/** Wait before trying again after a refused or failed refresh, ms (the server allows one per 10 s once its burst of 3 is spent). */
export const REFRESH_RETRY_MS = 10_000;

/** Connection states, in the order a connection normally goes through them. */
export const ConnectionState = Object.freeze({
  /** Created, `connect()` not called yet. */
  IDLE: 'idle',
  /** Opening a WebSocket (or finding out why the last attempt was refused). */
  CONNECTING: 'connecting',
  /** Connected: frames flow. */
  OPEN: 'open',
  /** Disconnected; the next attempt is scheduled. */
  RECONNECTING: 'reconnecting',
  /** The server refused the token (HTTP 401 before the upgrade): no more attempts. */
  AUTH_FAILED: 'auth_failed',
  /** The server refused the request itself (e.g. 400 for an invalid room id): no more attempts. */
  REFUSED: 'refused',
  /** `close()` was called. */
  CLOSED: 'closed',
});

/** An error the client reports: a server error code, or one of its own (`queue_full`, `disconnected`, ...). */
export class ChatError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [detail] extra fields (e.g. `retryAfterMs`, `clientMsgId`)
   */
  constructor(code, message, detail = {}) {
    super(message);
    this.name = 'ChatError';
    /** Machine-readable code. */
    this.code = code;
    Object.assign(this, detail);
  }
}

/** The clock the client uses unless a test passes its own. */
const systemClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id),
});

/**
 * The claims of a JWT, decoded without checking the signature (the server
 * checks it); used to learn the user id the server will see.
 * @param {string} token
 * @returns {Record<string, unknown> | null}
 */
export function tokenClaims(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

/** A fresh `clientMsgId`: 128 random bits as hex. */
function newClientMsgId() {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The WebSocket endpoint: the given URL (ws:, wss:, http: or https:), or `/ws` on the page's host. */
function endpoint(url) {
  if (url === undefined) {
    const loc = globalThis.location;
    if (!loc) throw new TypeError('ChatClient: `url` is required outside a browser page');
    url = `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
  }
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new TypeError(`ChatClient: unsupported URL ${url}`);
  }
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
  u.search = '';
  u.hash = '';
  const http = new URL(u.href);
  http.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  http.pathname = u.pathname.replace(/\/ws\/?$/, '');
  return { ws: u.href, http: http.href.replace(/\/$/, '') };
}

/** The HTTP status in a WebSocket error event, when the implementation says it (the `ws` package does). */
function statusOfErrorEvent(ev) {
  const text = `${ev?.message ?? ''} ${ev?.error?.message ?? ''}`;
  const m = /Unexpected server response: (\d{3})/.exec(text);
  return m ? Number(m[1]) : undefined;
}

export class ChatClient {
  /** @type {Emitter} */
  #events = new Emitter();
  /** @type {string} */
  #state = ConnectionState.IDLE;
  /** @type {{ws: string, http: string}} */
  #url;
  /** @type {string | (() => string | Promise<string>)} `getToken`, else `token` */
  #tokenSource;
  /** `token` given next to `getToken`: used for the first connection only, then `getToken`. */
  #firstToken = null;
  /** Token sent in a `refresh` and not answered yet. */
  #refreshing = null;
  #refreshLeadMs;
  /** Token of the current or last connection. */
  #token = '';
  /** @type {any} */
  #WebSocket;
  /** @type {typeof fetch | undefined} */
  #fetch;
  #clock;
  #random;
  /**
   * Rooms the application is in, in join order; `joined` is per connection.
   * Recovery state per room: `joinSince` the `since` of the join in flight or
   * last answered on this connection; `progressed` whether a message of the
   * room arrived since that join; `pageFrom` a `since` not to send again
   * (its connection was closed with 1013 before any progress), paged with
   * `history` after the next join instead; `gap` the recovery under way.
   */
  /** @type {Map<string, RoomState>} */
  #rooms = new Map();
  /** The initial room of the current connection when the application is in none (left again at once). */
  #transientHome = null;
  #cursors = new RoomCursors();
  /** @type {Outbox} */
  #outbox;
  #reconnector;
  #typingSettings;
  /** @type {Map<string, TypingThrottle>} */
  #typing = new Map();
  /** @type {Map<string, any>} room -> idle-stop timer */
  #typingTimers = new Map();
  /** @type {Map<string, {resolve: Function, reject: Function, expired: boolean, restart: Function}[]>} room -> pending history requests, oldest first; `restart` pushes the timeout back (a frame arrived) */
  #historyWaiters = new Map();
  /** Socket of the current attempt. */
  #ws = null;
  /** Bumped whenever a socket is given up, so late events of an old socket are ignored. */
  #gen = 0;
  /** Whether the current socket reached `open`. */
  #opened = false;
  /** @type {{status: number, error: string} | undefined} a refused upgrade's status, when the WebSocket implementation reported it */
  #refusalStatus = undefined;
  #closedByUser = false;
  #timers = { reconnect: null, ack: null, ping: null, pong: null, retry: null, refresh: null };
  /** When the scheduled reconnect fires (ms), or null. */
  #reconnectAt = null;
  #ackTimeoutMs;
  #pingIntervalMs;
  #pongTimeoutMs;
  /** Duplicate `message` frames dropped so far (for tests and diagnostics). */
  #duplicates = 0;

  /**
   * @param {import('./index.js').ChatClientOptions} options
   */
  constructor(options) {
    const o = options ?? {};
    if (o.getToken !== undefined && typeof o.getToken !== 'function') {
      throw new TypeError('ChatClient: `getToken` must be a function returning a JWT (or a promise of one)');
    }
    if (o.getToken === undefined && typeof o.token !== 'string' && typeof o.token !== 'function') {
      throw new TypeError('ChatClient: `token` (a JWT, or a function returning one) or `getToken` is required');
    }
    this.#tokenSource = o.getToken ?? o.token;
    if (o.getToken !== undefined && typeof o.token === 'string' && o.token !== '') this.#firstToken = o.token;
    this.#refreshLeadMs = o.refreshLeadMs ?? REFRESH_LEAD_MS;
    this.#url = endpoint(o.url);
    this.#WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('ChatClient: no WebSocket; in Node 20 pass `WebSocket` from the `ws` package');
    }
    this.#fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#clock = o.clock ?? systemClock;
    this.#random = o.random ?? Math.random;
    this.#outbox = new Outbox({ limit: o.queueLimit ?? OUTBOX_LIMIT });
    this.#reconnector = new Reconnector(o.reconnect ?? {}, this.#random);
    this.#typingSettings = o.typing ?? {};
    this.#ackTimeoutMs = o.ackTimeoutMs ?? 10_000;
    this.#pingIntervalMs = o.pingIntervalMs ?? 25_000;
    this.#pongTimeoutMs = o.pongTimeoutMs ?? 10_000;
    const rooms = o.rooms ?? [o.roomId ?? DEFAULT_ROOM];
    for (const room of rooms) {
      if (!isRoomId(room)) throw new TypeError(`ChatClient: invalid room id ${JSON.stringify(room)}`);
      this.#rooms.set(room, newRoom([]));
    }
  }

  // ---- state ---------------------------------------------------------

  /** The connection state (see `ConnectionState`). */
  get state() {
    return this.#state;
  }

  /** Whether frames flow now. */
  get isConnected() {
    return this.#state === ConnectionState.OPEN;
  }

  /** The rooms the application is in (joined now or to be joined on connect). */
  get rooms() {
    return [...this.#rooms.keys()];
  }

  /** Whether `roomId` is joined on the current connection. */
  isJoined(roomId) {
    return this.#rooms.get(roomId)?.joined === true;
  }

  /** Messages waiting for the server's ack, the one in flight included. */
  get queued() {
    return this.#outbox.size;
  }

  /** The newest message id seen in `roomId` (the `since` of its next join). */
  lastMessageId(roomId) {
    return this.#cursors.since(roomId);
  }

  /** Duplicate `message` frames dropped so far. */
  get duplicatesDropped() {
    return this.#duplicates;
  }

  /** When the scheduled reconnect fires (ms on the client's clock), or null when none is scheduled. */
  get reconnectAt() {
    return this.#reconnectAt;
  }

  /** The user id in the current token (`sub`, else `userId`), or null before the token is known. */
  get userId() {
    const claims = this.#token ? tokenClaims(this.#token) : null;
    const id = claims?.sub ?? claims?.userId;
    return typeof id === 'string' ? id : null;
  }

  /**
   * Subscribes to an event; returns the unsubscribe function.
   * Events: one per server frame type (`message`, `ack`, `presence`,
   * `room_joined`, `room_left`, `typing_indicator`, `history`, `pong`,
   * `refreshed`, `message_deleted` (an operator deleted a message of a
   * joined room: drop it from view), `error`), `frame` (every frame, before
   * dedupe), and `state`, `open`,
   * `close`, `auth_failed`, `refused`, `send_failed`, and `recovery` (how the
   * paging of a join answered `recovered: false` ended).
   */
  on(event, handler) {
    return this.#events.on(event, handler);
  }

  /** Like `on`, for one event only. */
  once(event, handler) {
    return this.#events.once(event, handler);
  }

  /** Removes a handler. */
  off(event, handler) {
    this.#events.off(event, handler);
  }

  // ---- connecting ------------------------------------------------------

  /**
   * Connects (or connects again after `close()`, an authentication
   * refusal or a refused request). Does nothing while connecting or open.
   */
  connect() {
    if (
      this.#state === ConnectionState.CONNECTING ||
      this.#state === ConnectionState.OPEN ||
      this.#state === ConnectionState.RECONNECTING
    ) {
      return;
    }
    this.#closedByUser = false;
    this.#reconnector.reset();
    void this.#open();
  }

  /**
   * Closes the connection for good (until `connect()`): no reconnect.
   * Queued messages are refused with `closed`.
   */
  close() {
    const wasOpen = this.#ws !== null;
    this.#closedByUser = true;
    this.#gen += 1;
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(CloseCode.NORMAL, 'closed by the application');
      } catch {
        // already closed
      }
    }
    this.#connectionGone();
    this.#clearTimer('reconnect');
    this.#reconnectAt = null;
    for (const item of this.#outbox.drain()) {
      this.#failSend(item, new ChatError('closed', 'the client was closed before the message was sent'));
    }
    for (const room of this.#rooms.values()) {
      for (const w of room.waiters.splice(0)) w.reject(new ChatError('closed', 'the client was closed'));
    }
    const previous = this.#state;
    this.#setState(ConnectionState.CLOSED);
    if (previous !== ConnectionState.CLOSED) {
      this.#events.emit('close', {
        code: CloseCode.NORMAL,
        reason: 'closed by the application',
        wasOpen,
        reconnect: false,
      });
    }
  }

  /** Whether a fresh token can be asked for (`getToken`, or `token` given as a function). */
  get #renewable() {
    return typeof this.#tokenSource === 'function';
  }

  /** Resolves the token (a string, or a function called before every attempt and refresh). */
  async #resolveToken() {
    let t;
    if (this.#firstToken !== null) {
      t = this.#firstToken;
      this.#firstToken = null;
    } else {
      t = typeof this.#tokenSource === 'function' ? await this.#tokenSource() : this.#tokenSource;
    }
    if (typeof t !== 'string' || t === '') throw new ChatError('auth_failed', 'the token function returned no token');
    return t;
  }

  /** One connection attempt. */
  async #open() {
    const gen = ++this.#gen;
    this.#reconnectAt = null;
    this.#setState(ConnectionState.CONNECTING);
    let token;
    try {
      token = await this.#resolveToken();
    } catch (err) {
      if (gen !== this.#gen) return;
      this.#setState(ConnectionState.AUTH_FAILED);
      this.#events.emit('auth_failed', { status: undefined, error: String(err?.message ?? err) });
      return;
    }
    if (gen !== this.#gen) return; // closed or restarted meanwhile
    this.#token = token;
    const first = this.#rooms.keys().next();
    const home = first.done ? DEFAULT_ROOM : first.value;
    this.#transientHome = first.done ? home : null;
    const params = new URLSearchParams({ token, roomId: home });
    const since = first.done ? undefined : this.#joinSince(home);
    if (since) params.set('since', since);
    this.#opened = false;
    this.#refusalStatus = undefined;
    let ws;
    try {
      ws = new this.#WebSocket(`${this.#url.ws}?${params}`);
    } catch (err) {
      this.#events.emit('error', { type: 'error', code: 'connect_failed', message: String(err?.message ?? err) });
      void this.#closed(gen, CloseCode.ABNORMAL, String(err?.message ?? err));
      return;
    }
    this.#ws = ws;
    ws.addEventListener('open', () => {
      if (gen === this.#gen) this.#onOpen();
    });
    ws.addEventListener('message', (ev) => {
      if (gen === this.#gen) this.#onData(ev.data);
    });
    ws.addEventListener('error', (ev) => {
      if (gen !== this.#gen || this.#opened) return;
      const status = statusOfErrorEvent(ev);
      if (status !== undefined) this.#refusalStatus ??= { status, error: String(ev?.message ?? '') };
    });
    ws.addEventListener('close', (ev) => {
      if (gen === this.#gen) void this.#closed(gen, ev.code || CloseCode.ABNORMAL, ev.reason ?? '');
    });
  }

  #onOpen() {
    this.#opened = true;
    const now = this.#clock.now();
    this.#reconnector.opened(now);
    this.#setState(ConnectionState.OPEN);
    this.#events.emit('open', { url: this.#url.ws });
    // The first room came with the URL; join the others, each from its cursor.
    let first = true;
    for (const roomId of this.#rooms.keys()) {
      if (first && this.#transientHome === null) {
        first = false;
        continue;
      }
      this.#sendJoin(roomId);
    }
    this.#schedulePing();
    this.#scheduleRefresh(tokenClaims(this.#token)?.exp);
  }

  #sendJoin(roomId) {
    const frame = { type: 'join_room', roomId };
    const since = this.#joinSince(roomId);
    if (since) frame.since = since;
    this.#sendFrame(frame);
  }

  /**
   * The `since` of the next join of `roomId` (none after a 1013 that a
   * `since` join made no progress against: that room is paged instead), and
   * notes it for the answer.
   */
  #joinSince(roomId) {
    const room = this.#rooms.get(roomId);
    const since = this.#cursors.since(roomId);
    if (!room) return since;
    room.progressed = false;
    room.firstAfterJoin = undefined;
    room.joinSince = room.pageFrom === undefined ? since : undefined;
    return room.joinSince;
  }

  /**
   * The socket closed (or was given up). Decides what comes next: nothing
   * after `close()`, an authentication refusal or a refused request; else a
   * reconnect after the delay the close code calls for.
   */
  async #closed(gen, code, reason) {
    const wasOpen = this.#opened;
    this.#ws = null;
    if (code === CloseCode.TRY_AGAIN_LATER) {
      // Closed as a slow consumer: a room joined with `since` that got
      // nothing since would get the same replay again; page it instead.
      for (const room of this.#rooms.values()) {
        if (room.joinSince !== undefined && !room.progressed) room.pageFrom = room.joinSince;
      }
    }
    this.#connectionGone();
    if (this.#closedByUser) return;
    if (code === CloseCode.BANNED || (code === CloseCode.TOKEN_EXPIRED && !this.#renewable)) {
      // Banned: never again by itself. Expired with no way to get a fresh
      // token: the same token would be refused.
      const banned = code === CloseCode.BANNED;
      const state = banned ? ConnectionState.REFUSED : ConnectionState.AUTH_FAILED;
      this.#setState(state);
      this.#events.emit(state, {
        status: undefined,
        code,
        error: reason || (banned ? 'banned' : 'token expired; no getToken to renew it'),
      });
      this.#events.emit('close', { code, reason, wasOpen, reconnect: false });
      return;
    }
    if (!wasOpen) {
      // Refused before the upgrade, or no server at all. Browsers hide the
      // HTTP status of a refused upgrade, so ask an authenticated route
      // with the same token: 401 there means the token is the problem.
      const status = this.#refusalStatus ?? (await this.#probe());
      if (gen !== this.#gen) return; // closed or reconnected meanwhile
      const verdict = classifyRefusal(status?.status);
      if (verdict !== 'retry') {
        const state = verdict === 'auth' ? ConnectionState.AUTH_FAILED : ConnectionState.REFUSED;
        this.#setState(state);
        this.#events.emit(state, { status: status?.status, error: status?.error ?? '' });
        this.#events.emit('close', { code, reason, wasOpen, reconnect: false });
        return;
      }
    }
    const now = this.#clock.now();
    const next = this.#reconnector.closed(code, now);
    this.#setState(ConnectionState.RECONNECTING);
    this.#reconnectAt = now + next.delayMs;
    this.#events.emit('close', {
      code,
      reason,
      wasOpen,
      reconnect: true,
      delayMs: next.delayMs,
      attempt: next.attempt,
      kind: next.kind,
    });
    this.#clearTimer('reconnect');
    this.#timers.reconnect = this.#clock.setTimeout(() => {
      this.#timers.reconnect = null;
      void this.#open();
    }, next.delayMs);
  }

  /**
   * Why was the upgrade refused? GET an authenticated route with the token.
   * @returns {Promise<{status: number, error: string} | undefined>} undefined when the server did not answer
   */
  async #probe() {
    if (!this.#fetch) return undefined;
    const room = this.#rooms.keys().next().value ?? DEFAULT_ROOM;
    try {
      const res = await this.#fetch(`${this.#url.http}/api/chats/rooms/${encodeURIComponent(room)}/presence`, {
        headers: { Authorization: `Bearer ${this.#token}` },
        cache: 'no-store',
      });
      let error = '';
      try {
        error = (await res.json())?.error ?? '';
      } catch {
        // not JSON
      }
      return { status: res.status, error };
    } catch {
      return undefined; // no server (down, restarting) or no network
    }
  }

  /**
   * Gives up the current socket at once (it stopped answering), without
   * waiting for a closing handshake that may never come, and reconnects.
   */
  #drop(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    const gen = ++this.#gen;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    void this.#closed(gen, code, reason);
  }

  /** Clears what belonged to the connection that just ended. */
  #connectionGone() {
    for (const name of ['ack', 'ping', 'pong', 'retry', 'refresh']) this.#clearTimer(name);
    this.#refreshing = null;
    this.#outbox.disconnected();
    for (const room of this.#rooms.values()) room.joined = false;
    for (const waiters of this.#historyWaiters.values()) {
      for (const w of waiters) if (!w.expired) w.reject(new ChatError('disconnected', 'the connection dropped before the answer'));
    }
    this.#historyWaiters.clear();
    for (const timer of this.#typingTimers.values()) this.#clock.clearTimeout(timer);
    this.#typingTimers.clear();
    for (const t of this.#typing.values()) t.reset();
  }

  #setState(state) {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.#events.emit('state', { state, previous });
  }

  #clearTimer(name) {
    if (this.#timers[name] !== null) {
      this.#clock.clearTimeout(this.#timers[name]);
      this.#timers[name] = null;
    }
  }

  #sendFrame(frame) {
    const ws = this.#ws;
    if (!ws || !this.#opened || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- heartbeat -----------------------------------------------------------

  /** A `ping` every `pingIntervalMs`; no `pong` within `pongTimeoutMs` gives the socket up. */
  #schedulePing() {
    this.#clearTimer('ping');
    if (!(this.#pingIntervalMs > 0)) return;
    this.#timers.ping = this.#clock.setTimeout(() => {
      this.#timers.ping = null;
      if (!this.#sendFrame({ type: 'ping' })) return;
      this.#clearTimer('pong');
      this.#timers.pong = this.#clock.setTimeout(() => {
        this.#timers.pong = null;
        this.#drop(CloseCode.NO_ANSWER, 'no pong');
      }, this.#pongTimeoutMs);
    }, this.#pingIntervalMs);
  }

  // ---- token refresh ----------------------------------------------------------

  /**
   * Schedules the renewal of a token expiring at `exp` (Unix seconds):
   * `refreshLeadMs` (30 s) before it, or with a fifth of its lifetime left
   * when that is sooner (a 10 s token is renewed 2 s before `exp`). Nothing
   * without `exp` or without a way to get a fresh token.
   */
  #scheduleRefresh(exp) {
    this.#clearTimer('refresh');
    if (!this.#renewable || typeof exp !== 'number' || !Number.isFinite(exp)) return;
    const now = this.#clock.now();
    const expMs = exp * 1000;
    const iat = tokenClaims(this.#token)?.iat;
    const issued = typeof iat === 'number' ? Math.min(iat * 1000, now) : now;
    const lead = Math.min(this.#refreshLeadMs, Math.max(0, expMs - issued) * REFRESH_LIFETIME_SHARE);
    this.#setRefreshTimer(Math.max(0, expMs - lead - now));
  }

  #setRefreshTimer(delayMs) {
    this.#clearTimer('refresh');
    this.#timers.refresh = this.#clock.setTimeout(() => {
      this.#timers.refresh = null;
      void this.#refresh();
    }, delayMs);
  }

  /** Asks `getToken` for a fresh token and sends it in a `refresh` frame. */
  async #refresh() {
    const gen = this.#gen;
    let token;
    try {
      token = await this.#resolveToken();
    } catch (err) {
      if (gen !== this.#gen || !this.isConnected) return;
      this.#events.emit('error', { type: 'error', code: 'token_refresh_failed', message: String(err?.message ?? err) });
      this.#setRefreshTimer(REFRESH_RETRY_MS);
      return;
    }
    if (gen !== this.#gen || !this.isConnected) return;
    if (this.#sendFrame({ type: 'refresh', token })) this.#refreshing = token;
  }

  /** `refreshed`: the connection now runs on the token sent; renew it in turn. */
  #onRefreshed(frame) {
    if (this.#refreshing !== null) this.#token = this.#refreshing;
    this.#refreshing = null;
    this.#scheduleRefresh(frame.exp);
    this.#events.emit('refreshed', frame);
  }

  // ---- incoming frames -------------------------------------------------------

  #onData(data) {
    let frame;
    try {
      frame = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      return; // not JSON: chatd sends none; ignore rather than fail
    }
    if (frame === null || typeof frame !== 'object') return;
    // Frames still flow: a history answer queued behind them is coming.
    for (const waiters of this.#historyWaiters.values()) for (const w of waiters) w.restart();
    this.#events.emit('frame', frame);
    switch (frame.type) {
      case 'message':
        return this.#onMessage(frame);
      case 'ack':
        return this.#onAck(frame);
      case 'room_joined':
        return this.#onRoomJoined(frame);
      case 'room_left':
        return this.#events.emit('room_left', frame);
      case 'typing_indicator':
        if (this.#rooms.has(frame.roomId)) this.#events.emit('typing_indicator', frame);
        return;
      case 'presence':
        return this.#events.emit('presence', frame);
      case 'message_deleted':
        if (this.#rooms.has(frame.roomId)) this.#events.emit('message_deleted', frame);
        return;
      case 'history':
        return this.#onHistory(frame);
      case 'pong':
        this.#clearTimer('pong');
        this.#schedulePing();
        return this.#events.emit('pong', frame);
      case 'refreshed':
        return this.#onRefreshed(frame);
      case 'error':
        return this.#onError(frame);
      default:
        // Frames of types this client does not know are ignored (contract).
        return;
    }
  }

  #onMessage(frame) {
    // Frames of a room the application left are late; drop them.
    const room = this.#rooms.get(frame.roomId);
    if (!room) return;
    if (!this.#cursors.accept(frame.roomId, frame.messageId)) {
      this.#duplicates += 1;
      return;
    }
    room.progressed = true;
    room.firstAfterJoin ??= frame.messageId;
    this.#events.emit('message', frame);
  }

  #onAck(frame) {
    const wasInflight = this.#outbox.inflight?.clientMsgId === frame.clientMsgId;
    const item = this.#outbox.ack(frame.clientMsgId);
    if (wasInflight) this.#clearTimer('ack');
    if (item) item.token.resolve(frame);
    this.#events.emit('ack', frame);
    this.#flush();
  }

  #onRoomJoined(frame) {
    const room = this.#rooms.get(frame.roomId);
    if (!room) {
      if (frame.roomId === this.#transientHome) {
        // Joined only because a connection always starts in a room.
        this.#transientHome = null;
        this.#sendFrame({ type: 'leave_room', roomId: frame.roomId });
      }
      return;
    }
    room.joined = true;
    room.memberCount = frame.memberCount;
    // What this join leaves to page: everything after its `since` when the
    // replay was not all of it, or after the `since` not sent again.
    const gapFrom = frame.recovered === false ? room.joinSince : room.pageFrom;
    room.pageFrom = undefined;
    for (const w of room.waiters.splice(0)) w.resolve(frame);
    this.#events.emit('room_joined', frame);
    this.#flush();
    if (gapFrom !== undefined && room.gap === undefined) void this.#recoverGap(frame.roomId, room, gapFrom);
  }

  /**
   * Pages the messages a join did not replay: `history` after `since`,
   * oldest first, until a page reaches the first message that arrived after
   * the join (the replay's oldest, or the first live one), the room has no
   * more, or {@link GAP_MAX_PAGES} pages. Every page asks from the last id
   * of the one before, so it always moves forward and always ends. The
   * answers come after the replay (the server sends them behind it), so the
   * first message after the join is known by the time a page is looked at.
   * Messages of the gap are emitted as `message` events (older than what
   * the replay delivered: `mergeMessages` puts them in place).
   */
  async #recoverGap(roomId, room, since) {
    const gen = this.#gen;
    room.gap = { since };
    let after = since;
    let messages = 0;
    let pages = 0;
    let complete = false;
    let error;
    try {
      while (pages < GAP_MAX_PAGES) {
        const page = await this.history(roomId, { after, limit: HISTORY_MAX_LIMIT });
        pages += 1;
        if (gen !== this.#gen || this.#rooms.get(roomId) !== room) return;
        const list = page.messages ?? [];
        const upTo = room.firstAfterJoin;
        let reached = false;
        for (const m of list) {
          if (upTo !== undefined && m.messageId >= upTo) {
            reached = true;
            break;
          }
          messages += 1;
          this.#events.emit('message', m);
        }
        if (reached || list.length === 0 || (!page.more && list.length < HISTORY_MAX_LIMIT)) {
          complete = true;
          break;
        }
        after = list[list.length - 1].messageId;
      }
    } catch (err) {
      // Disconnected (the next join recovers from the cursor again),
      // `unavailable` or no answer: the application may page the rest.
      error = err;
    } finally {
      if (room.gap?.since === since) room.gap = undefined;
    }
    if (gen !== this.#gen || this.#rooms.get(roomId) !== room) return;
    const event = { roomId, since, complete, pages, messages };
    if (!complete) {
      event.after = after;
      if (error) event.code = error.code ?? 'internal';
    }
    this.#events.emit('recovery', event);
  }

  #onHistory(frame) {
    for (const m of frame.messages ?? []) {
      if (isMessageId(m.messageId)) this.#cursors.observe(frame.roomId, m.messageId);
    }
    const waiters = this.#historyWaiters.get(frame.roomId);
    const w = waiters?.shift();
    if (waiters && waiters.length === 0) this.#historyWaiters.delete(frame.roomId);
    if (w && !w.expired) w.resolve(frame);
    this.#events.emit('history', frame);
  }

  #onError(frame) {
    const now = this.#clock.now();
    if (frame.code === 'invalid_token') {
      // The refresh was refused; the connection keeps its old expiry. Try
      // once more later (a fresh `getToken` call); if the old token runs
      // out first, the 4001 close reconnects with a fresh one.
      this.#refreshing = null;
      if (this.#renewable) this.#setRefreshTimer(REFRESH_RETRY_MS);
    } else if (frame.code === 'rate_limited' && this.#refreshing !== null && !this.#outbox.inflight) {
      // Over the server's refresh budget (no message is waiting for an
      // answer, so the refusal is the refresh's): try when it says.
      this.#refreshing = null;
      this.#setRefreshTimer(frame.retryAfterMs ?? REFRESH_RETRY_MS);
    } else if (frame.code === 'room_limit') {
      // Answer to the oldest join still waiting.
      for (const [roomId, room] of this.#rooms) {
        if (!room.joined && roomId !== this.#rooms.keys().next().value) {
          this.#rooms.delete(roomId);
          for (const w of room.waiters.splice(0)) w.reject(new ChatError(frame.code, frame.message));
          break;
        }
      }
    } else if (frame.code === 'unavailable' && !this.#outbox.inflight && this.#historyWaiters.size > 0) {
      // A `history` the store could not answer in full (nothing else is
      // waiting for an answer that could be `unavailable`): the oldest
      // request gets it.
      const [roomId, waiters] = this.#historyWaiters.entries().next().value;
      const w = waiters.shift();
      if (waiters.length === 0) this.#historyWaiters.delete(roomId);
      if (w && !w.expired) w.reject(new ChatError(frame.code, frame.message));
    } else if (this.#outbox.inflight && MESSAGE_ERROR_CODES.has(frame.code)) {
      this.#clearTimer('ack');
      const refused = this.#outbox.refuse(frame.code, frame.retryAfterMs, now);
      if (refused && !refused.retry) {
        this.#failSend(
          refused.item,
          new ChatError(frame.code, frame.message, frame.retryAfterMs === undefined ? {} : { retryAfterMs: frame.retryAfterMs }),
        );
      }
      this.#flush();
    }
    this.#events.emit('error', frame);
  }

  // ---- sending -------------------------------------------------------------

  /**
   * Sends a chat message to `roomId` (default: the first room). Returns a
   * promise of the server's `ack`, with the message's `clientMsgId` on it.
   * While disconnected the message waits in the queue (at most `queueLimit`
   * messages); when the queue is full the promise is rejected at once with
   * `queue_full` and nothing queued is dropped. A message the server refuses
   * (`message_blocked`, `message_too_long`, ...) rejects with that code;
   * `rate_limited` is retried after `retryAfterMs`.
   *
   * @param {string} content
   * @param {string} [roomId]
   * @returns {Promise<import('./index.js').AckFrame> & {clientMsgId: string}}
   */
  send(content, roomId = this.#rooms.keys().next().value ?? DEFAULT_ROOM) {
    let resolve;
    let reject;
    const promise = /** @type {any} */ (
      new Promise((res, rej) => {
        resolve = res;
        reject = rej;
      })
    );
    // Failures are also reported as `send_failed` events; an application
    // that ignores the promise must not crash on an unhandled rejection.
    promise.catch(() => {});
    const clientMsgId = newClientMsgId();
    promise.clientMsgId = clientMsgId;
    const item = {
      clientMsgId,
      roomId,
      content,
      timestamp: new Date(this.#clock.now()).toISOString(),
      token: { resolve, reject },
    };
    const refuse = (code, message) => {
      this.#failSend(item, new ChatError(code, message));
      return promise;
    };
    if (this.#state === ConnectionState.CLOSED) return refuse('closed', 'the client is closed');
    if (typeof content !== 'string' || content.trim() === '') {
      return refuse('invalid_message', 'a message needs non-blank text');
    }
    if (!this.#rooms.has(roomId)) return refuse('not_in_room', `not in room ${roomId}`);
    const frame = { type: 'message', roomId, content, timestamp: item.timestamp, clientMsgId };
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) {
      return refuse('message_too_long', `the message frame is over ${MAX_FRAME_BYTES} bytes`);
    }
    if (!this.#outbox.push(item)) {
      return refuse('queue_full', `${this.#outbox.limit} messages are already waiting to be sent`);
    }
    this.#stopTyping(roomId);
    this.#flush();
    return promise;
  }

  #failSend(item, error) {
    error.clientMsgId = item.clientMsgId;
    error.roomId = item.roomId;
    item.token.reject(error);
    this.#events.emit('send_failed', {
      clientMsgId: item.clientMsgId,
      roomId: item.roomId,
      content: item.content,
      code: error.code,
      message: error.message,
    });
  }

  /** Sends the next queued message if nothing is in flight and its room is joined. */
  #flush() {
    if (this.#state !== ConnectionState.OPEN) return;
    const now = this.#clock.now();
    const item = this.#outbox.next((roomId) => this.isJoined(roomId), now);
    if (item) {
      this.#sendFrame({
        type: 'message',
        roomId: item.roomId,
        content: item.content,
        timestamp: item.timestamp,
        clientMsgId: item.clientMsgId,
      });
      this.#clearTimer('ack');
      this.#timers.ack = this.#clock.setTimeout(() => {
        this.#timers.ack = null;
        // No ack and no error: the connection is presumed dead. The message
        // goes again, same clientMsgId, on the next connection.
        this.#drop(CloseCode.NO_ANSWER, 'no ack');
      }, this.#ackTimeoutMs);
      return;
    }
    const at = this.#outbox.inflight ? null : this.#outbox.nextRetryAt();
    this.#clearTimer('retry');
    if (at !== null) {
      this.#timers.retry = this.#clock.setTimeout(
        () => {
          this.#timers.retry = null;
          this.#flush();
        },
        Math.max(0, at - now),
      );
    }
  }

  // ---- rooms ---------------------------------------------------------------

  /**
   * Joins a room (now if connected, else on connect); resolves with its
   * `room_joined`. Joining a room the client is in resolves as well.
   * @param {string} roomId
   * @returns {Promise<import('./index.js').RoomJoinedFrame>}
   */
  join(roomId) {
    if (!isRoomId(roomId)) {
      return Promise.reject(new ChatError('invalid_room', `invalid room id ${JSON.stringify(roomId)}`));
    }
    if (this.#state === ConnectionState.CLOSED) {
      return Promise.reject(new ChatError('closed', 'the client is closed'));
    }
    const existing = this.#rooms.get(roomId);
    if (existing?.joined) {
      return Promise.resolve({ type: 'room_joined', roomId, memberCount: existing.memberCount });
    }
    const promise = new Promise((resolve, reject) => {
      if (existing) {
        existing.waiters.push({ resolve, reject });
      } else {
        this.#rooms.set(roomId, newRoom([{ resolve, reject }]));
        if (this.#state === ConnectionState.OPEN) this.#sendJoin(roomId);
      }
    });
    promise.catch(() => {});
    return promise;
  }

  /**
   * Leaves a room: no more events from it, its cursor is forgotten (a later
   * join starts fresh) and its queued messages are refused with `not_in_room`.
   * @param {string} roomId
   */
  leave(roomId) {
    const room = this.#rooms.get(roomId);
    if (!room) return;
    this.#stopTyping(roomId);
    this.#typing.delete(roomId);
    this.#rooms.delete(roomId);
    this.#cursors.forget(roomId);
    for (const w of room.waiters.splice(0)) w.reject(new ChatError('not_in_room', `left room ${roomId}`));
    const hadInflight = this.#outbox.inflight?.roomId === roomId;
    for (const item of this.#outbox.dropRoom(roomId)) {
      this.#failSend(item, new ChatError('not_in_room', `left room ${roomId} before the message was sent`));
    }
    if (hadInflight) this.#clearTimer('ack');
    this.#sendFrame({ type: 'leave_room', roomId });
    this.#flush();
  }

  // ---- typing ----------------------------------------------------------------

  /**
   * Reports the user typing (`true`, on every keystroke) or not (`false`).
   * Throttled: at most one `true` per `typing.intervalMs` per room, and a
   * `false` after `typing.idleMs` without keystrokes or when a message is
   * sent. Ignored while the room is not joined (typing is never queued).
   * @param {string} [roomId]
   * @param {boolean} [isTyping]
   * @returns {boolean} whether a frame was sent
   */
  typing(roomId = this.#rooms.keys().next().value ?? DEFAULT_ROOM, isTyping = true) {
    if (!this.isJoined(roomId)) return false;
    let t = this.#typing.get(roomId);
    if (!t) this.#typing.set(roomId, (t = new TypingThrottle(this.#typingSettings)));
    if (!isTyping) return this.#stopTyping(roomId);
    const now = this.#clock.now();
    const sent = t.input(now) && this.#sendFrame({ type: 'typing', roomId, isTyping: true });
    this.#armTypingIdle(roomId, t);
    return sent;
  }

  #armTypingIdle(roomId, t) {
    const old = this.#typingTimers.get(roomId);
    if (old !== undefined) this.#clock.clearTimeout(old);
    const at = t.idleAt();
    if (at === null) {
      this.#typingTimers.delete(roomId);
      return;
    }
    const timer = this.#clock.setTimeout(
      () => {
        this.#typingTimers.delete(roomId);
        if (t.idle(this.#clock.now())) this.#sendFrame({ type: 'typing', roomId, isTyping: false });
        else this.#armTypingIdle(roomId, t);
      },
      Math.max(0, at - this.#clock.now()),
    );
    this.#typingTimers.set(roomId, timer);
  }

  #stopTyping(roomId) {
    const t = this.#typing.get(roomId);
    const timer = this.#typingTimers.get(roomId);
    if (timer !== undefined) this.#clock.clearTimeout(timer);
    this.#typingTimers.delete(roomId);
    if (t?.stop()) return this.#sendFrame({ type: 'typing', roomId, isTyping: false });
    return false;
  }

  // ---- history, presence, ping ---------------------------------------------

  /**
   * Asks for stored messages of a room over the WebSocket; resolves with the
   * `history` frame (oldest first). Needs a connection (rejects with
   * `disconnected` otherwise); rejects with `timeout` when no answer comes
   * within `ackTimeoutMs` of the last frame received (the server answers
   * behind what it is already sending, a `since` replay of up to 1,000
   * messages included, so frames still arriving mean the answer is coming).
   * @param {string} roomId
   * @param {{before?: string, after?: string, limit?: number}} [page]
   * @returns {Promise<import('./index.js').HistoryFrame>}
   */
  history(roomId, { before, after, limit } = {}) {
    if (!isRoomId(roomId)) return Promise.reject(new ChatError('invalid_room', `invalid room id ${JSON.stringify(roomId)}`));
    for (const [name, id] of [['before', before], ['after', after]]) {
      if (id !== undefined && !isMessageId(id)) {
        return Promise.reject(new ChatError('invalid_message', `${name} is not a message id`));
      }
    }
    const frame = { type: 'history', roomId };
    if (before !== undefined) frame.before = before;
    if (after !== undefined) frame.after = after;
    if (limit !== undefined) frame.limit = Math.min(HISTORY_MAX_LIMIT, Math.max(1, Math.floor(limit)));
    if (!this.#sendFrame(frame)) return Promise.reject(new ChatError('disconnected', 'not connected'));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, expired: false, restart: () => {} };
      let list = this.#historyWaiters.get(roomId);
      if (!list) this.#historyWaiters.set(roomId, (list = []));
      list.push(waiter);
      const expire = () => {
        if (!waiter.expired) {
          // Left in the list: a late answer still belongs to this request.
          waiter.expired = true;
          reject(new ChatError('timeout', 'no history answer'));
        }
      };
      let timer = this.#clock.setTimeout(expire, this.#ackTimeoutMs);
      waiter.restart = () => {
        if (waiter.expired) return;
        this.#clock.clearTimeout(timer);
        timer = this.#clock.setTimeout(expire, this.#ackTimeoutMs);
      };
      const done = () => this.#clock.clearTimeout(timer);
      waiter.resolve = (v) => {
        done();
        resolve(v);
      };
      waiter.reject = (e) => {
        done();
        reject(e);
      };
    });
  }

  /**
   * The users online in a room, from the HTTP route
   * `/api/chats/rooms/{roomId}/presence` (same origin, or a server that allows
   * the page's origin).
   * @param {string} roomId
   * @returns {Promise<{roomId: string, online: string[]}>}
   */
  async presence(roomId) {
    if (!this.#fetch) throw new ChatError('unsupported', 'no fetch in this environment');
    const token = this.#token || (await this.#resolveToken());
    const res = await this.#fetch(`${this.#url.http}/api/chats/rooms/${encodeURIComponent(roomId)}/presence`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: 'no-store',
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new ChatError(res.status === 401 ? 'auth_failed' : 'http_error', body.error ?? `HTTP ${res.status}`, { status: res.status });
    return body;
  }

  /** Sends an application-level `ping` (answered with a `pong` event). */
  ping() {
    return this.#sendFrame({ type: 'ping' });
  }
}

/**
 * @typedef {object} RoomState
 * @property {boolean} joined
 * @property {number} memberCount
 * @property {{resolve: Function, reject: Function}[]} waiters
 * @property {string | undefined} joinSince
 * @property {boolean} progressed
 * @property {string | undefined} firstAfterJoin the first new message of the room after its join
 * @property {string | undefined} pageFrom
 * @property {{since: string} | undefined} gap
 */

/** A room's state before its first join. */
function newRoom(waiters) {
  return {
    joined: false,
    memberCount: 0,
    waiters,
    joinSince: undefined,
    progressed: false,
    firstAfterJoin: undefined,
    pageFrom: undefined,
    gap: undefined,
  };
}
