// ChatClient against a fake WebSocket and a manual clock: every timer-driven
// behaviour (backoff, heartbeat, ack timeout, typing idle) is checked by
// moving time forward, never by sleeping.

import assert from 'node:assert/strict';
import test from 'node:test';

import { ChatClient, ChatError } from '../../src/client.js';
import { FakeClock, fakeWebSocketClass, mid, settle } from '../helpers/fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const fetches = [];
  const fetchStatus = options.fetchStatus;
  const fetch = async (url, init) => {
    fetches.push({ url, init });
    if (fetchStatus === undefined) throw new TypeError('fetch failed');
    return { status: fetchStatus, ok: fetchStatus === 200, json: async () => ({ error: `status ${fetchStatus}` }) };
  };
  const client = new ChatClient({
    url: 'ws://chat.test/ws',
    token: 'tok',
    roomId: 'general',
    WebSocket: FakeWebSocket,
    fetch,
    clock: clock.api(),
    random: () => 0.5,
    ...options.client,
  });
  const events = [];
  for (const name of ['message', 'ack', 'state', 'close', 'auth_failed', 'send_failed', 'typing_indicator', 'history']) {
    client.on(name, (e) => events.push([name, e]));
  }
  const of = (name) => events.filter(([n]) => n === name).map(([, e]) => e);
  return { clock, sockets, client, events, of, fetches };
}

const msgFrame = (n, roomId = 'general') => ({
  type: 'message',
  messageId: mid(n),
  userId: 'bob',
  username: 'Bob',
  roomId,
  content: `m${n}`,
  timestamp: '2026-11-24T00:00:00.000Z',
});

test('connects with token and room in the URL and reports the state', () => {
  const { client, sockets, of } = setup();
  assert.equal(client.state, 'idle');
  client.connect();
  return settle().then(() => {
    assert.equal(sockets.length, 1);
    const url = new URL(sockets[0].url);
    assert.equal(url.origin + url.pathname, 'ws://chat.test/ws');
    assert.equal(url.searchParams.get('token'), 'tok');
    assert.equal(url.searchParams.get('roomId'), 'general');
    assert.equal(url.searchParams.get('since'), null);
    sockets[0].serverOpen('general');
    assert.equal(client.state, 'open');
    assert.equal(client.isJoined('general'), true);
    assert.deepEqual(of('state').map((s) => s.state), ['connecting', 'open']);
  });
});

test('sends queued while disconnected go out after the join, one at a time, with a clientMsgId', async () => {
  const { client, sockets } = setup();
  const p1 = client.send('first');
  const p2 = client.send('second');
  assert.equal(client.queued, 2);
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen(); // open, room_joined not yet
  assert.deepEqual(ws.sentOfType('message'), [], 'nothing before room_joined');
  ws.serverSend({ type: 'room_joined', roomId: 'general', memberCount: 1 });
  assert.equal(ws.sentOfType('message').length, 1, 'one in flight');
  const [f1] = ws.sentOfType('message');
  assert.equal(f1.content, 'first');
  assert.equal(f1.roomId, 'general');
  assert.equal(f1.clientMsgId, p1.clientMsgId);
  assert.match(f1.clientMsgId, /^[0-9a-f]{32}$/);
  ws.serverSend({ type: 'ack', clientMsgId: p1.clientMsgId, messageId: mid(1), roomId: 'general' });
  assert.deepEqual(await p1, { type: 'ack', clientMsgId: p1.clientMsgId, messageId: mid(1), roomId: 'general' });
  assert.equal(ws.sentOfType('message')[1].clientMsgId, p2.clientMsgId);
  assert.notEqual(p1.clientMsgId, p2.clientMsgId);
});

test('reconnect: backoff delay, rejoin every room from its cursor, resend the unacked message, no duplicate', async () => {
  const { client, sockets, clock, of } = setup({ client: { rooms: ['general', 'dev'] } });
  client.connect();
  await settle();
  const ws1 = sockets[0];
  ws1.serverOpen('general');
  assert.deepEqual(ws1.sentOfType('join_room'), [{ type: 'join_room', roomId: 'dev' }]);
  ws1.serverSend({ type: 'room_joined', roomId: 'dev', memberCount: 2 });
  ws1.serverSend(msgFrame(1));
  ws1.serverSend(msgFrame(2));
  ws1.serverSend(msgFrame(7, 'dev'));
  const pending = client.send('unacked');
  const sentFirst = ws1.sentOfType('message')[0];
  // Healthy for 10 s, then the connection drops before the ack.
  clock.advance(10_000);
  ws1.serverClose(1006);
  await settle();
  assert.equal(client.state, 'reconnecting');
  const close = of('close').at(-1);
  // Stable connection: attempt 0, window 500 ms, random 0.5 -> 250 ms.
  assert.deepEqual([close.attempt, close.delayMs, close.reconnect], [0, 250, true]);
  clock.advance(249);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  await settle();
  assert.equal(sockets.length, 2);
  const ws2 = sockets[1];
  const url = new URL(ws2.url);
  assert.equal(url.searchParams.get('roomId'), 'general');
  assert.equal(url.searchParams.get('since'), mid(2));
  ws2.serverOpen('general');
  assert.deepEqual(ws2.sentOfType('join_room'), [{ type: 'join_room', roomId: 'dev', since: mid(7) }]);
  // The replay overlaps what was seen (server-side race): dropped by id.
  ws2.serverSend(msgFrame(2));
  ws2.serverSend(msgFrame(3));
  ws2.serverSend(msgFrame(3));
  // The unacked message goes again with the same clientMsgId.
  const resent = ws2.sentOfType('message');
  assert.equal(resent.length, 1);
  assert.equal(resent[0].clientMsgId, sentFirst.clientMsgId);
  assert.equal(resent[0].content, 'unacked');
  ws2.serverSend({ type: 'ack', clientMsgId: pending.clientMsgId, messageId: mid(3), roomId: 'general' });
  assert.equal((await pending).messageId, mid(3));
  assert.deepEqual(
    of('message').map((m) => m.messageId),
    [mid(1), mid(2), mid(7), mid(3)],
  );
  assert.equal(client.duplicatesDropped, 2);
});

test('failed attempts back off with growing windows', async () => {
  const { client, sockets, clock, of, fetches } = setup({ client: { random: () => 0.999_999 } });
  client.connect();
  for (let i = 0; i < 4; i++) {
    await settle();
    sockets.at(-1).serverClose(1006); // refused or no server; the probe fetch fails too
    await settle();
    clock.advance(of('close').at(-1).delayMs);
  }
  assert.deepEqual(of('close').map((c) => c.delayMs), [499, 999, 1999, 3999]);
  assert.equal(fetches.length, 4, 'each failure before open probes once');
});

test('no reconnect after an authentication refusal (browser: probe answers 401)', async () => {
  const { client, sockets, clock, of, fetches } = setup({ fetchStatus: 401 });
  client.connect();
  await settle();
  sockets[0].serverClose(1006);
  await settle();
  await settle();
  assert.equal(client.state, 'auth_failed');
  assert.equal(fetches[0].url, 'http://chat.test/api/chats/rooms/general/presence');
  assert.equal(fetches[0].init.headers.Authorization, 'Bearer tok');
  assert.deepEqual(of('auth_failed'), [{ status: 401, error: 'status 401' }]);
  assert.equal(of('close').at(-1).reconnect, false);
  assert.equal(client.reconnectAt, null);
  assert.deepEqual(clock.pending(), [], 'no timer left that could reconnect');
  clock.advance(3_600_000);
  await settle();
  assert.equal(sockets.length, 1);
});

test('no reconnect after an authentication refusal (Node ws: status in the error event)', async () => {
  const { client, sockets, clock, fetches } = setup({ fetchStatus: 200 });
  client.connect();
  await settle();
  sockets[0].fire('error', { message: 'Unexpected server response: 401' });
  sockets[0].serverClose(1006);
  await settle();
  assert.equal(client.state, 'auth_failed');
  assert.equal(fetches.length, 0, 'the status was known without a probe');
  assert.deepEqual(clock.pending(), []);
});

test('a refused upgrade whose probe says the token is fine is retried', async () => {
  const { client, sockets, clock } = setup({ fetchStatus: 200 });
  client.connect();
  await settle();
  sockets[0].serverClose(1006);
  await settle();
  await settle();
  assert.equal(client.state, 'reconnecting');
  clock.advance(clock.pending()[0] - clock.now());
  await settle();
  assert.equal(sockets.length, 2);
});

test('1012 and 1013 follow their meaning', async () => {
  // No heartbeat: the fake server does not answer pings.
  const { client, sockets, clock, of } = setup({ client: { pingIntervalMs: 0 } });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  clock.advance(60_000);
  sockets[0].serverClose(1012);
  await settle();
  assert.deepEqual([of('close').at(-1).kind, of('close').at(-1).delayMs], ['restart', 3000]);
  clock.advance(3000);
  await settle();
  sockets[1].serverOpen('general');
  clock.advance(60_000);
  sockets[1].serverClose(1013);
  await settle();
  // Window 500 * 2^3 = 4000, random 0.5.
  assert.deepEqual([of('close').at(-1).kind, of('close').at(-1).delayMs], ['overload', 2000]);
});

test('a full queue refuses the new message at once', async () => {
  const { client, of } = setup({ client: { queueLimit: 2 } });
  client.send('a');
  client.send('b');
  const third = client.send('c');
  await assert.rejects(third, (err) => err instanceof ChatError && err.code === 'queue_full');
  assert.equal(client.queued, 2);
  assert.deepEqual(of('send_failed').map((f) => [f.code, f.content]), [['queue_full', 'c']]);
});

test('sends that cannot succeed are refused before queueing', async () => {
  const { client } = setup();
  await assert.rejects(client.send('   '), { code: 'invalid_message' });
  await assert.rejects(client.send('x', 'elsewhere'), { code: 'not_in_room' });
  await assert.rejects(client.send('x'.repeat(70_000)), { code: 'message_too_long' });
  assert.equal(client.queued, 0);
});

test('rate_limited: the same message is sent again after retryAfterMs; a block is final', async () => {
  const { client, sockets, clock, of } = setup();
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  const p = client.send('hello');
  const blocked = client.send('bad words');
  ws.serverSend({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 1500 });
  assert.equal(ws.sentOfType('message').length, 1);
  clock.advance(1499);
  assert.equal(ws.sentOfType('message').length, 1);
  clock.advance(1);
  const sent = ws.sentOfType('message');
  assert.equal(sent.length, 2);
  assert.equal(sent[1].clientMsgId, p.clientMsgId);
  ws.serverSend({ type: 'ack', clientMsgId: p.clientMsgId, messageId: mid(1), roomId: 'general' });
  await p;
  assert.equal(ws.sentOfType('message')[2].clientMsgId, blocked.clientMsgId);
  ws.serverSend({ type: 'error', code: 'message_blocked', message: 'refused' });
  await assert.rejects(blocked, { code: 'message_blocked', clientMsgId: blocked.clientMsgId });
  assert.deepEqual(of('send_failed').map((f) => f.code), ['message_blocked']);
  assert.equal(client.queued, 0);
});

test('no ack in time: the socket is given up and the message resent on the next one', async () => {
  const { client, sockets, clock } = setup({ client: { ackTimeoutMs: 5000 } });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  const p = client.send('hello');
  clock.advance(5000);
  await settle();
  assert.equal(sockets[0].closedWith, 4000);
  assert.equal(client.state, 'reconnecting');
  clock.advance(clock.pending()[0] - clock.now());
  await settle();
  sockets[1].serverOpen('general');
  assert.equal(sockets[1].sentOfType('message')[0].clientMsgId, p.clientMsgId);
});

test('heartbeat: a missing pong gives the socket up', async () => {
  const { client, sockets, clock } = setup({ client: { pingIntervalMs: 1000, pongTimeoutMs: 500 } });
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  clock.advance(1000);
  assert.deepEqual(ws.sentOfType('ping'), [{ type: 'ping' }]);
  ws.serverSend({ type: 'pong' });
  clock.advance(1000);
  assert.equal(ws.sentOfType('ping').length, 2);
  clock.advance(499);
  assert.equal(client.state, 'open');
  clock.advance(1);
  await settle();
  assert.equal(ws.closedWith, 4000);
  assert.equal(client.state, 'reconnecting');
});

test('typing is throttled, stops when idle and when a message is sent', async () => {
  const { client, sockets, clock } = setup({ client: { typing: { intervalMs: 2000, idleMs: 5000 } } });
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  const typing = () => ws.sentOfType('typing').map((f) => f.isTyping);
  for (let i = 0; i < 30; i++) {
    client.typing('general');
    clock.advance(100);
  }
  // 3 s of keystrokes: true at 0 and at 2000.
  assert.deepEqual(typing(), [true, true]);
  clock.advance(4899);
  assert.deepEqual(typing(), [true, true]);
  clock.advance(1);
  assert.deepEqual(typing(), [true, true, false], 'idle stop 5 s after the last keystroke');
  client.typing('general');
  client.send('done');
  assert.deepEqual(typing(), [true, true, false, true, false], 'sending stops typing');
  assert.equal(client.typing('nowhere'), false, 'not joined: nothing sent');
});

test('history resolves with the answer and moves the cursor', async () => {
  const { client, sockets } = setup();
  await assert.rejects(client.history('general'), { code: 'disconnected' });
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  const page = client.history('general', { before: mid(9), limit: 500 });
  assert.deepEqual(ws.sentOfType('history'), [{ type: 'history', roomId: 'general', before: mid(9), limit: 200 }]);
  ws.serverSend({ type: 'history', roomId: 'general', messages: [msgFrame(4), msgFrame(5)] });
  assert.deepEqual((await page).messages.map((m) => m.messageId), [mid(4), mid(5)]);
  assert.equal(client.lastMessageId('general'), mid(5));
  await assert.rejects(client.history('general', { before: 'nope' }), { code: 'invalid_message' });
});

test('close() stops for good and refuses what is queued', async () => {
  const { client, sockets, clock, of } = setup();
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  sockets[0].serverClose(1006);
  await settle();
  const p = client.send('late');
  client.close();
  await assert.rejects(p, { code: 'closed' });
  assert.equal(client.state, 'closed');
  assert.deepEqual(clock.pending(), []);
  clock.advance(60_000);
  assert.equal(sockets.length, 1);
  assert.equal(of('close').at(-1).reconnect, false);
});

test('leaving a room drops its frames and queued messages; joining sends since only when known', async () => {
  const { client, sockets, of } = setup();
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  const joined = client.join('dev');
  assert.deepEqual(ws.sentOfType('join_room'), [{ type: 'join_room', roomId: 'dev' }]);
  const queued = client.send('to dev', 'dev');
  ws.serverSend(msgFrame(1, 'dev'));
  client.leave('dev');
  await assert.rejects(queued, { code: 'not_in_room' });
  await assert.rejects(joined, { code: 'not_in_room' });
  assert.deepEqual(ws.sentOfType('leave_room'), [{ type: 'leave_room', roomId: 'dev' }]);
  ws.serverSend(msgFrame(2, 'dev'));
  assert.deepEqual(of('message').map((m) => m.messageId), [mid(1)]);
  assert.deepEqual(client.rooms, ['general']);
});

test('message_deleted is an event for the rooms the client is in', async () => {
  const { client, sockets } = setup();
  const deleted = [];
  client.on('message_deleted', (d) => deleted.push(d));
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  ws.serverSend(msgFrame(1));
  ws.serverSend({ type: 'message_deleted', roomId: 'general', messageId: mid(1) });
  ws.serverSend({ type: 'message_deleted', roomId: 'elsewhere', messageId: mid(2) });
  assert.deepEqual(deleted, [{ type: 'message_deleted', roomId: 'general', messageId: mid(1) }]);
});

/** Connects, sees messages 1 and 2 of `general`, and reconnects after a drop: the second socket. */
async function reconnectedAfter2(t) {
  t.client.connect();
  await settle();
  const ws1 = t.sockets[0];
  ws1.serverOpen('general');
  ws1.serverSend(msgFrame(1));
  ws1.serverSend(msgFrame(2));
  t.clock.advance(10_000);
  ws1.serverClose(1006);
  await settle();
  t.clock.advance(60_000);
  await settle();
  assert.equal(t.sockets.length, 2);
  return t.sockets[1];
}

test('recovered:false: pages the gap with history after since up to the replay, then stops', async () => {
  const t = setup({ client: { pingIntervalMs: 0 } });
  t.client.on('recovery', (e) => t.events.push(['recovery', e]));
  const ws2 = await reconnectedAfter2(t);
  assert.equal(new URL(ws2.url).searchParams.get('since'), mid(2));
  ws2.readyState = 1;
  ws2.fire('open');
  // More was missed than the replay holds: it starts at 100.
  ws2.serverSend({ type: 'room_joined', roomId: 'general', memberCount: 3, recovered: false });
  for (const n of [100, 101, 102]) ws2.serverSend(msgFrame(n));
  await settle();
  assert.deepEqual(ws2.sentOfType('history'), [{ type: 'history', roomId: 'general', after: mid(2), limit: 200 }]);
  // A page cut to the server's budget says `more`: the next one follows it.
  ws2.serverSend({ type: 'history', roomId: 'general', messages: [msgFrame(3), msgFrame(4)], more: true });
  await settle();
  assert.deepEqual(ws2.sentOfType('history').at(-1), { type: 'history', roomId: 'general', after: mid(4), limit: 200 });
  // This page reaches the replay: the gap is closed, paging stops.
  ws2.serverSend({
    type: 'history',
    roomId: 'general',
    messages: [msgFrame(5), msgFrame(6), msgFrame(100), msgFrame(101)],
    more: false,
  });
  await settle();
  assert.equal(ws2.sentOfType('history').length, 2, 'no third page');
  assert.deepEqual(
    t.of('message').map((m) => m.messageId),
    [1, 2, 100, 101, 102, 3, 4, 5, 6].map(mid),
    'every message once: the gap after the replay',
  );
  assert.deepEqual(t.of('recovery'), [{ roomId: 'general', since: mid(2), complete: true, pages: 2, messages: 4 }]);
  // No reconnect, and the next join recovers from the newest message.
  assert.equal(t.sockets.length, 2);
  assert.equal(t.client.lastMessageId('general'), mid(102));
  // A join with recovered:true pages nothing.
  t.client.join('dev');
  assert.deepEqual(ws2.sentOfType('join_room'), [{ type: 'join_room', roomId: 'dev' }]);
  ws2.serverSend({ type: 'room_joined', roomId: 'dev', memberCount: 1 });
  await settle();
  assert.equal(ws2.sentOfType('history').length, 2);
});

test('recovered:false: an unavailable page ends the paging and says where', async () => {
  const t = setup({ client: { pingIntervalMs: 0 } });
  t.client.on('recovery', (e) => t.events.push(['recovery', e]));
  const ws2 = await reconnectedAfter2(t);
  ws2.readyState = 1;
  ws2.fire('open');
  ws2.serverSend({ type: 'room_joined', roomId: 'general', memberCount: 1, recovered: false });
  await settle();
  assert.equal(ws2.sentOfType('history').length, 1);
  ws2.serverSend({ type: 'error', code: 'unavailable', message: 'history storage is unavailable' });
  await settle();
  assert.deepEqual(t.of('recovery'), [
    { roomId: 'general', since: mid(2), complete: false, pages: 0, messages: 0, after: mid(2), code: 'unavailable' },
  ]);
  assert.equal(ws2.sentOfType('history').length, 1, 'not asked again by itself');
  assert.equal(t.sockets.length, 2, 'the connection is kept');
});

test('a 1013 before a since join made progress: the next join drops since and pages instead, so it does not loop', async () => {
  const t = setup({ client: { pingIntervalMs: 0 } });
  t.client.on('recovery', (e) => t.events.push(['recovery', e]));
  const ws2 = await reconnectedAfter2(t);
  assert.equal(new URL(ws2.url).searchParams.get('since'), mid(2));
  // Closed as a slow consumer before any of the replay arrived.
  ws2.serverOpen('general');
  ws2.serverClose(1013);
  await settle();
  t.clock.advance(60_000);
  await settle();
  assert.equal(t.sockets.length, 3);
  const ws3 = t.sockets[2];
  assert.equal(new URL(ws3.url).searchParams.get('since'), null, 'the same since is not sent again');
  ws3.serverOpen('general');
  await settle();
  assert.deepEqual(ws3.sentOfType('history'), [{ type: 'history', roomId: 'general', after: mid(2), limit: 200 }]);
  // Live traffic meanwhile: the gap ends before it.
  ws3.serverSend(msgFrame(9));
  ws3.serverSend({ type: 'history', roomId: 'general', messages: [3, 4, 9].map((n) => msgFrame(n)) });
  await settle();
  assert.deepEqual(t.of('message').map((m) => m.messageId), [1, 2, 9, 3, 4].map(mid));
  assert.deepEqual(t.of('recovery'), [{ roomId: 'general', since: mid(2), complete: true, pages: 1, messages: 2 }]);
  // Progress was made: a later 1013 reconnects with the cursor as usual.
  ws3.serverClose(1013);
  await settle();
  t.clock.advance(60_000);
  await settle();
  assert.equal(new URL(t.sockets[3].url).searchParams.get('since'), mid(9));
});

test('a history answer may take longer than ackTimeoutMs while frames keep arriving ahead of it', async () => {
  const { client, sockets, clock } = setup({ client: { pingIntervalMs: 0 } });
  client.connect();
  await settle();
  const ws = sockets[0];
  ws.serverOpen('general');
  let outcome;
  client.history('general', { limit: 10 }).then(
    (page) => (outcome = ['answer', page.messages.length]),
    (err) => (outcome = ['rejected', err.code]),
  );
  // A long replay ahead of the answer: a frame every 9 s, 27 s in all.
  for (const n of [1, 2, 3]) {
    clock.advance(9_000);
    ws.serverSend(msgFrame(n));
    await settle();
    assert.equal(outcome, undefined, `still waiting after ${n * 9} s`);
  }
  ws.serverSend({ type: 'history', roomId: 'general', messages: [msgFrame(1)], more: false });
  await settle();
  assert.deepEqual(outcome, ['answer', 1]);
  // Silence: the next request times out after ackTimeoutMs.
  outcome = undefined;
  client.history('general', { limit: 10 }).then(
    () => (outcome = ['answer']),
    (err) => (outcome = ['rejected', err.code]),
  );
  clock.advance(9_999);
  await settle();
  assert.equal(outcome, undefined);
  clock.advance(1);
  await settle();
  assert.deepEqual(outcome, ['rejected', 'timeout']);
});
