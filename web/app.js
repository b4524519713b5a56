// The demo chat page: a small UI on the chatd JavaScript client, which the
// server serves from its own copy of clients/js/src under /js/.

import { ChatClient, TypingTracker, isRoomId, mergeMessages, tokenClaims } from '/js/index.js';

/** Messages asked for per history page. */
const PAGE = 50;
/** Scroll distance from the top that loads the previous page. */
const LOAD_OLDER_AT_PX = 40;
/** Scroll distance from the bottom under which new messages keep the view at the bottom. */
const STICK_TO_BOTTOM_PX = 80;
/** Session keys: the token and the rooms survive a reload, not the browser session. */
const TOKEN_KEY = 'chatd.token';
const ROOMS_KEY = 'chatd.rooms';

const $ = (id) => document.getElementById(id);

/** Element helper: tag, class, text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// ---- token and rooms from the address bar or the session ----------------

const params = new URLSearchParams(location.search);
if (params.has('token')) {
  sessionStorage.setItem(TOKEN_KEY, params.get('token'));
  // Out of the address bar (history, screenshots, shoulder surfing).
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
}
const urlRoom = params.get('room');

function savedRooms() {
  try {
    const rooms = JSON.parse(sessionStorage.getItem(ROOMS_KEY) ?? '[]');
    return Array.isArray(rooms) ? rooms.filter(isRoomId) : [];
  } catch {
    return [];
  }
}

function showLogin(message = '') {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('token-input').focus();
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const token = $('token-input').value.trim();
  const room = $('room-input').value.trim();
  if (!tokenClaims(token)) {
    $('login-error').textContent = 'That does not look like a JWT.';
    return;
  }
  if (!isRoomId(room)) {
    $('login-error').textContent = 'A room id is 1 to 128 letters, digits, _ - . or :';
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify([room]));
  start(token, [room]);
});

$('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---- the chat ---------------------------------------------------------------

/** @type {ChatClient} */
let client;
/** The signed-in user id. */
let me = '';
/** The room on screen. */
let current = '';
/** Per-room view state. */
const rooms = new Map();
const typing = new TypingTracker();
let typingTimer = null;
let reconnectInMs = null;

function roomState(roomId) {
  let r = rooms.get(roomId);
  if (!r) {
    r = {
      /** Messages from the server, sorted by id, each once. */
      messages: [],
      /** Own messages not acknowledged yet: clientMsgId -> {content, failed}. */
      pending: new Map(),
      /** Users online (presence route, then presence frames). */
      online: new Set(),
      /** No older history to load. */
      complete: false,
      /** A history request is out. */
      loading: false,
      /** The first page was loaded. */
      loaded: false,
      /** Messages that arrived while another room was on screen. */
      unread: 0,
    };
    rooms.set(roomId, r);
  }
  return r;
}

function start(token, roomIds) {
  const claims = tokenClaims(token) ?? {};
  me = String(claims.sub ?? claims.userId ?? '');
  $('me').textContent = `signed in as ${claims.username ?? claims.name ?? me}`;
  $('login').hidden = true;
  $('app').hidden = false;
  client = new ChatClient({ token, rooms: roomIds });
  for (const id of roomIds) roomState(id);
  current = roomIds[0];

  client.on('state', ({ state }) => renderConnection(state));
  client.on('close', (e) => {
    reconnectInMs = e.reconnect ? e.delayMs : null;
    renderConnection(client.state);
  });
  client.on('auth_failed', ({ error }) => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(`The server refused this token${error ? `: ${error}` : ''}.`);
  });
  client.on('refused', ({ error }) => showLogin(`The server refused the request${error ? `: ${error}` : ''}.`));
  client.on('room_joined', (f) => onJoined(f.roomId));
  client.on('message', (m) => {
    const r = roomState(m.roomId);
    r.messages = mergeMessages(r.messages, [m]);
    typing.remove(m.roomId, m.userId);
    if (m.roomId === current) renderMessages({ stick: m.userId === me });
    else r.unread += 1;
    renderRooms();
    renderTyping();
  });
  client.on('ack', (a) => {
    const r = roomState(a.roomId);
    if (r.pending.delete(a.clientMsgId) && a.roomId === current) renderMessages({});
  });
  client.on('presence', (p) => {
    const r = rooms.get(p.roomId);
    if (!r) return;
    if (p.status === 'online') r.online.add(p.userId);
    else {
      r.online.delete(p.userId);
      typing.remove(p.roomId, p.userId);
    }
    if (p.roomId === current) {
      renderOnline();
      renderTyping();
    }
  });
  client.on('message_deleted', (d) => {
    // An operator deleted it: it leaves the room's list and the screen.
    const r = roomState(d.roomId);
    const before = r.messages.length;
    r.messages = r.messages.filter((m) => m.messageId !== d.messageId);
    if (r.messages.length !== before && d.roomId === current) renderMessages({});
  });
  client.on('typing_indicator', (t) => {
    typing.update(t, Date.now());
    if (t.roomId === current) renderTyping();
  });
  client.connect();
  renderAll();
}

/** A room was joined (first time, or again after a reconnect). */
async function onJoined(roomId) {
  const r = roomState(roomId);
  // The online list is fetched afresh on every join: presence frames only
  // report changes, and some may have been missed while disconnected.
  client
    .presence(roomId)
    .then(({ online }) => {
      r.online = new Set(online);
      if (roomId === current) renderOnline();
    })
    .catch(() => {});
  if (!r.loaded && !r.loading) {
    // The latest page; after a reconnect the client's `since` replay fills
    // the gap instead, so this runs once per room.
    r.loading = true;
    try {
      const page = await client.history(roomId, { limit: PAGE });
      r.messages = mergeMessages(r.messages, page.messages);
      r.complete = page.messages.length < PAGE;
      r.loaded = true;
    } catch {
      // Disconnected before the answer: the next join tries again.
    } finally {
      r.loading = false;
    }
    if (roomId === current) renderMessages({ stick: true });
  }
}

/** Loads the page before the oldest message on screen (scroll-up). */
async function loadOlder() {
  const roomId = current;
  const r = roomState(roomId);
  if (r.complete || r.loading || !r.loaded || !client.isJoined(roomId)) return;
  const oldest = r.messages[0]?.messageId;
  if (!oldest) {
    r.complete = true;
    return renderHistoryStatus();
  }
  r.loading = true;
  renderHistoryStatus();
  try {
    const page = await client.history(roomId, { before: oldest, limit: PAGE });
    r.complete = page.messages.length < PAGE;
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    r.messages = mergeMessages(r.messages, page.messages);
    if (roomId === current) {
      renderMessages({});
      box.scrollTop = box.scrollHeight - fromBottom; // keep the view where it was
    }
  } catch {
    // Disconnected: scrolling up again retries.
  } finally {
    r.loading = false;
    renderHistoryStatus();
  }
}

function switchRoom(roomId) {
  current = roomId;
  roomState(roomId).unread = 0;
  renderAll();
  $('composer-input').focus();
}

function saveRooms() {
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify(client.rooms));
}

// ---- rendering ------------------------------------------------------------------

function renderAll() {
  renderConnection(client.state);
  renderRooms();
  renderOnline();
  renderMessages({ stick: true });
  renderTyping();
}

const STATE_TEXT = {
  idle: 'idle',
  connecting: 'connecting…',
  open: 'connected',
  reconnecting: 'reconnecting',
  auth_failed: 'token refused',
  refused: 'refused',
  closed: 'closed',
};

function renderConnection(state) {
  const conn = $('conn');
  conn.dataset.state = state;
  let text = STATE_TEXT[state] ?? state;
  if (state === 'reconnecting' && reconnectInMs !== null) text += ` (retry in ${Math.ceil(reconnectInMs / 1000)} s)`;
  const queued = client?.queued ?? 0;
  if (queued > 0 && state !== 'open') text += `, ${queued} queued`;
  conn.textContent = text;
}

function renderRooms() {
  const list = $('rooms');
  list.replaceChildren(
    ...client.rooms.map((roomId) => {
      const li = el('li', roomId === current ? 'current' : '');
      li.dataset.room = roomId;
      const button = el('button', 'room');
      button.type = 'button';
      button.append(el('span', 'name', `# ${roomId}`));
      const unread = rooms.get(roomId)?.unread ?? 0;
      if (unread > 0) button.append(el('span', 'unread', String(unread)));
      button.addEventListener('click', () => switchRoom(roomId));
      li.append(button);
      if (client.rooms.length > 1) {
        const leave = el('button', 'leave', '×');
        leave.type = 'button';
        leave.title = `Leave ${roomId}`;
        leave.addEventListener('click', () => {
          client.leave(roomId);
          rooms.delete(roomId);
          saveRooms();
          if (current === roomId) switchRoom(client.rooms[0]);
          else renderRooms();
        });
        li.append(leave);
      }
      return li;
    }),
  );
  $('room-title').textContent = `# ${current}`;
}

function renderOnline() {
  const online = [...roomState(current).online].sort();
  $('online-count').textContent = `(${online.length})`;
  $('online').replaceChildren(
    ...online.map((userId) => {
      const li = el('li', userId === me ? 'self' : '', userId === me ? `${userId} (you)` : userId);
      li.dataset.user = userId;
      return li;
    }),
  );
}

function messageItem(m) {
  const li = el('li', m.userId === me ? 'message own' : 'message');
  li.dataset.messageId = m.messageId;
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', m.username ?? m.userId), el('time', '', timeOf(m.timestamp)));
  li.append(meta, el('div', 'text', m.content));
  return li;
}

function pendingItem(clientMsgId, p) {
  const li = el('li', p.failed ? 'message own pending failed' : 'message own pending');
  li.dataset.clientMsgId = clientMsgId;
  const meta = el('div', 'meta');
  const status = p.failed ? `not sent (${p.failed})` : client.isConnected ? 'sending…' : 'queued';
  meta.append(el('span', 'author', 'you'), el('span', 'status', status));
  li.append(meta, el('div', 'text', p.content));
  return li;
}

function renderMessages({ stick = false }) {
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < STICK_TO_BOTTOM_PX;
  const r = roomState(current);
  $('message-list').replaceChildren(
    ...r.messages.map(messageItem),
    ...[...r.pending].map(([id, p]) => pendingItem(id, p)),
  );
  renderHistoryStatus();
  if (stick || atBottom) box.scrollTop = box.scrollHeight;
}

function renderHistoryStatus() {
  const r = roomState(current);
  $('history-status').textContent = r.loading
    ? 'loading…'
    : r.complete
      ? r.messages.length
        ? 'beginning of the room'
        : 'no messages yet'
      : r.loaded
        ? 'scroll up for older messages'
        : '';
}

function renderTyping() {
  clearTimeout(typingTimer);
  const now = Date.now();
  const users = typing.typing(current, now).filter((u) => u.userId !== me);
  const names = users.map((u) => u.username);
  const box = $('typing');
  box.dataset.users = users.map((u) => u.userId).join(',');
  box.textContent =
    names.length === 0
      ? ''
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length <= 3
          ? `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`
          : `${names.length} people are typing…`;
  // Indicators expire on their own (a stop can be lost): re-render then.
  const next = typing.nextExpiry(current);
  if (next !== null) typingTimer = setTimeout(renderTyping, Math.max(0, next - now) + 10);
}

// ---- input -----------------------------------------------------------------------

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('composer-input');
  const content = input.value;
  if (content.trim() === '') return;
  const roomId = current;
  const sent = client.send(content, roomId);
  const r = roomState(roomId);
  const pending = { content, failed: null };
  r.pending.set(sent.clientMsgId, pending);
  // Refused (queue full, blocked by moderation, ...): shown as not sent.
  sent.catch((err) => {
    pending.failed = err.code;
    if (roomId === current) renderMessages({});
  });
  input.value = '';
  renderMessages({ stick: true });
  renderConnection(client.state);
});

$('composer-input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $('composer').requestSubmit();
  }
});

$('composer-input').addEventListener('input', (ev) => {
  client.typing(current, ev.target.value.trim() !== '');
});

$('messages').addEventListener('scroll', () => {
  if ($('messages').scrollTop < LOAD_OLDER_AT_PX) void loadOlder();
});

$('join-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('join-input');
  const roomId = input.value.trim();
  if (!isRoomId(roomId)) return;
  input.value = '';
  roomState(roomId);
  client.join(roomId).catch(() => {});
  saveRooms();
  switchRoom(roomId);
});

// ---- go ----------------------------------------------------------------------------

const token = sessionStorage.getItem(TOKEN_KEY);
if (token) {
  const list = savedRooms();
  if (urlRoom && isRoomId(urlRoom) && !list.includes(urlRoom)) list.unshift(urlRoom);
  if (list.length === 0) list.push('general');
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify(list));
  start(token, list);
} else {
  if (urlRoom && isRoomId(urlRoom)) $('room-input').value = urlRoom;
  showLogin();
}
